from fewtune.cli import main

main()
