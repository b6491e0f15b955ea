"""csr-vdb: Contrastive Sparse Representation (CSR) codes for vector databases."""

__version__ = "0.1.0"
