from smotune.cli import main

raise SystemExit(main())
