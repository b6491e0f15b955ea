"""The `csr-vdb` command line (a thin Click layer over the library)."""
