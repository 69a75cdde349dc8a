"""The camera index: the data model, the build, live updates, persistence and inspection for maps."""
