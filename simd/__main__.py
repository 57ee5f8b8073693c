from simd.cli import main

raise SystemExit(main())
