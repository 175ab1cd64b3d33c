"""Built-in methods: one small file each, registered through the same hook as third-party ones."""
