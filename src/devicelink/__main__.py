from devicelink.cli import main

raise SystemExit(main())
