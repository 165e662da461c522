from mtl_cli.cli import main

main()
