"""Entry point placeholder, replaced by the CLI work."""
import click


@click.group()
def main() -> None:
    """csr-vdb: move dense vector collections onto CSR sparse vectors."""


