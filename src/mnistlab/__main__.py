from mnistlab.cli.main import main

raise SystemExit(main())
