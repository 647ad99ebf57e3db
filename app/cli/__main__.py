from atlas.app.cli import main

main()
