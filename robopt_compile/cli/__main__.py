"""``python -m robopt_compile.cli``."""

from robopt_compile.cli import main

main()
