from mgtool.cli import main

raise SystemExit(main())
