"""Shared by edge, train and central: config loading, SQLite migrations, file hashes, the wire contract, a local broker."""
