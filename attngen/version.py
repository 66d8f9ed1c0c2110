"""The package version, apart from attngen/__init__.py so that the runtime can name it
without importing the whole package."""
__version__ = "0.1.0"
