from synclip.cli import main

main()
