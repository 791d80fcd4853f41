"""The datasite's HTTP and websocket server (tornado)."""
