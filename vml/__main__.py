from vml.cli import main

main()
