from kdlab.cli import main

raise SystemExit(main())
