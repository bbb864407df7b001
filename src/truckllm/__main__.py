from truckllm.cli import main

raise SystemExit(main())
