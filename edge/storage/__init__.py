"""The SQLite store, its outbox, and the recorder that turns analyses into rows and messages."""
