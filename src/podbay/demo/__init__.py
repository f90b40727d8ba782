"""The seed's case study: support chats, a frustration detector, one fresh pod per intervention."""
