"""Integrations with other libraries (xarray's ``engine="lazymem"``), each in a module of its own
that imports its library only when that library is in use."""
