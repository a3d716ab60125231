from aggbatt.bench.runner import main

raise SystemExit(main())
