from tokengym.cli import main

raise SystemExit(main())
