"""Integrations with other libraries, made by registration (dask's ``normalize_token.register``,
``sizeof.register_lazy``, distributed's ``dask_serialize.register``, xarray's ``engine="lazymem"``
entry point), each in a module of its own that imports its library only when that library is in use."""

from .dask import to_dask

__all__ = ["to_dask"]
