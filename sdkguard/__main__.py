from sdkguard._cli import main

raise SystemExit(main())
