"""The JavaScript/TypeScript plugin runtime: transpiling plugin code and running it in V8 isolates."""
