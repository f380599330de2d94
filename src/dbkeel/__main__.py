"""``python -m dbkeel``: the same as the ``dbkeel`` command."""

from dbkeel.cli import main

main()
