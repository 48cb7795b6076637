from memeval.cli import main

raise SystemExit(main())
