from integration.bench.run import main

main()
