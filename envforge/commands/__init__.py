"""Commands that live in their own modules (each imports only click at module level: --help stays fast)."""
