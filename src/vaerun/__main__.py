from vaerun.cli import main

raise SystemExit(main())
