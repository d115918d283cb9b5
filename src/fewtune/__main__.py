from fewtune.app.cli import main

main()
