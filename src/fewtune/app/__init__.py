"""What a user runs: the command line, the HTTP server and its page, the demo."""
