"""The process runtime: the reactor, the worker thread pool and worker processes."""
