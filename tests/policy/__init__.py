"""Policy engine tests: pure Python, no kernel."""
