"""Integrations with other libraries, made by registration (``normalize_token.register``,
``sizeof.register_lazy``, ``dask_serialize.register``), each in a module of its own that imports
its library only when that library is in use."""

from .dask import to_dask

__all__ = ["to_dask"]
