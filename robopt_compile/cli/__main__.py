"""``python -m robopt_compile.cli``."""

from robopt_compile.cli.main import main

main()
