"""Entry point: `podbay doctor | images build | templates ... | snapshot ... | run | volume ... | demo | bench ... |
serve | tokens ... | quotas ... | usage | logs | trace | postmortem ... | debug | db ...`, and against a server
(PODBAY_SERVER): `create | ps | exec | pause | resume | destroy | fork | restore | files ...`."""

from __future__ import annotations

import typer

from podbay.cli import (
    bench,
    db,
    demo,
    doctor,
    images,
    inspect,
    pods,
    quotas,
    run,
    serve,
    snapshot,
    templates,
    tokens,
    usage,
    volume,
)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="podbay: a fresh isolated pod (microVM + private database) per agent task.",
)
app.command("doctor")(doctor.doctor)
app.command("run", context_settings={"allow_interspersed_args": False})(run.run)
app.command("demo")(demo.demo)
app.command("serve")(serve.serve)
app.command("usage")(usage.usage)
app.command("create")(pods.create)
app.command("ps")(pods.ps)
app.command("exec", context_settings={"allow_interspersed_args": False})(pods.exec_)
app.command("pause")(pods.pause)
app.command("resume")(pods.resume)
app.command("destroy")(pods.destroy)
app.command("fork")(pods.fork)
app.command("restore")(pods.restore)
app.add_typer(pods.files, name="files")
app.command("logs")(inspect.logs)
app.command("trace")(inspect.trace)
app.command("debug")(inspect.debug)
app.add_typer(inspect.app, name="postmortem")
app.add_typer(images.app, name="images")
app.add_typer(templates.app, name="templates")
app.add_typer(snapshot.app, name="snapshot")
app.add_typer(volume.app, name="volume")
app.add_typer(bench.app, name="bench")
app.add_typer(tokens.app, name="tokens")
app.add_typer(quotas.app, name="quotas")
app.add_typer(db.app, name="db")


def main() -> None:
    app()
