from lmforge.cli.main import main

raise SystemExit(main())
