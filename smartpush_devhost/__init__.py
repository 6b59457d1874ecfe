"""A development host for SmartPush plugins: SQLModel storage, crypto, scheduler and the smartpush CLI."""
