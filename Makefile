.DEFAULT_GOAL := help
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

help: ## list targets
	@awk 'BEGIN{FS=":.*##"} /^[a-zA-Z_-]+:.*##/ {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

demo: ## the demo: fake DingTalk with faults, dingproxy, traffic; two tables, the faults and an outage (about 40 s)
	$(GO) run ./cmd/dingdemo

resilience: ## the resilience benchmark: the faults, pacing, fleet, quota and cache, and deferred scenarios, the clients side by side, the tables and the targets (about 5 minutes, loopback only; the fleet group and the deferred group's fleet-kill need redis-server)
	$(GO) run ./cmd/resilience

demo-fleet: ## dingproxies alone beside dingproxies sharing through a local redis-server, in the fleet scenarios (about 1 minute; needs redis-server on the PATH)
	@command -v redis-server >/dev/null || { echo "demo-fleet needs redis-server on the PATH (apt-get install -y redis-server)"; exit 1; }
	$(GO) run ./cmd/resilience -group fleet

test: ## go vet, then every test that a slow machine cannot break, with the race detector, shuffled (see soak)
	$(GO) vet ./...
	$(GO) test -race -shuffle=on -count=1 ./...
	# The heap test measures memory, which the race detector distorts: it runs without.
	$(GO) test -count=1 -run '^(TestSlowUploadsStayUnderBufferCap|TestLRUBoundedInMemory)$$' -v ./internal/app ./internal/proxy

# Tests whose verdict depends on the machine's speed live in *soak_test.go
# files behind the build tag soak, so make test leaves them out. make soak
# runs exactly the test functions of those files, one package at a time
# (-p 1) so that they do not compete for the CPU. SOAK_FLAGS= drops -race.
SOAK_FLAGS ?= -race
SOAK_FILES = $(shell find internal cmd -name '*soak_test.go')
# The soak tests that mostly wait for a robot's minutes (counts are their
# verdicts) run beside the others, in the background, to keep CI short.
SOAK_WAITING = TestBinaryKilledAlertBurst|TestAlertBurstOnTheClock
SOAK_TESTS = $(shell sed -n 's/^func \(Test[A-Za-z0-9_]*\)(t \*testing\.T).*/\1/p' $(SOAK_FILES) | grep -vxE '$(SOAK_WAITING)' | paste -sd'|' -)
SOAK_PKGS = $(sort $(patsubst %/,./%,$(dir $(SOAK_FILES))))
soak: ## the wall-clock tests (files *soak_test.go, tag soak): fault soaks (with defer on too), demo, resilience and deferred-send promises and targets, load runs, timeouts (about 7 min; a run too slow to check a promise is made again, a few times at most)
	$(GO) vet -tags soak $(SOAK_PKGS)
	log=$$(mktemp); $(GO) test -tags soak -count=1 -p 2 -timeout 20m -run '^($(SOAK_WAITING))$$' ./cmd/dingproxy ./internal/resilience > $$log 2>&1 & waiting=$$!; \
	$(GO) test -tags soak $(SOAK_FLAGS) -count=1 -p 1 -timeout 30m -run '^($(SOAK_TESTS))$$' $(SOAK_PKGS); rc=$$?; \
	wait $$waiting || { rc=1; echo "soak: the robot-minute soaks failed:"; }; cat $$log; rm -f $$log; exit $$rc
	# Memory under 400,000 distinct cached reads, and latency at 1,000 calls a second with a
	# stale shared token: measured without the race detector.
	$(GO) test -tags soak -count=1 -timeout 10m -run '^(TestDistinctCachedReadsStayBounded|TestStaleSharedTokenAtLoad)$$' -v ./internal/app

# The tests against a real Redis, and what each run of them must show:
# each PASSes, none SKIPs. test-fleet runs them against one redis-server,
# test-fleet-cluster against a Redis Cluster of three masters
# (internal/redistest's REDISTEST_CLUSTER=1).
FLEET_TESTS = ^(TestFleet.*|TestToken.*|TestRedisGoneAndBack|TestRedisFailureNamed|TestSharedPacingHoldsTheFleet|TestSharedAdmitsAsAlone|TestThrottleSharedAcrossTheFleet|TestSharedRobotBudget|TestOpeningsAndBansShared|TestBreakerOpensAtTheSameCountAloneAndShared|TestHostileRedis.*|TestResync.*|TestQuotaStops.*|TestEventsBounded|TestJunkOpeningsBounded|TestQuotaFloodBounded|Test.*OutOfBounds|TestSealedValuesBoundToTheirKey)$$
# fleet-tests runs FLEET_TESTS with the environment $(1), verbose, into
# bin/<target>.log, and fails on a failure, a skip or fewer passes than
# expected.
define fleet-tests
	@command -v redis-server >/dev/null || { echo "$@ needs redis-server on the PATH (apt-get install -y redis-server)"; exit 1; }
	mkdir -p bin
	$(1) $(GO) test -race -count=1 -v -run '$(FLEET_TESTS)' ./internal/fleet ./internal/app > bin/$@.log 2>&1 || { cat bin/$@.log; exit 1; }
	@grep -E '^(--- |ok|FAIL)' bin/$@.log
	@! grep -q -- '--- SKIP' bin/$@.log || { echo "fleet tests skipped"; exit 1; }
	@test "$$(grep -c -- '--- PASS' bin/$@.log)" -ge 24 || { echo "fewer fleet tests ran than expected"; exit 1; }
	@test "$$(grep -c -- '--- PASS: TestFleetOutbox' bin/$@.log)" -ge 6 || { echo "fewer shared outbox tests ran than expected"; exit 1; }
endef

test-fleet: ## the tests against a real redis-server, verbose: each must PASS, none SKIP
	$(call fleet-tests,)

test-fleet-cluster: ## the same tests against a real Redis Cluster of three masters on loopback, verbose (redis-server and redis-cli; about 2.5 minutes; CI runs it beside make test)
	$(call fleet-tests,REDISTEST_CLUSTER=1)
	@test "$$(grep -c -- 'redistest: a Redis Cluster of 3 masters' bin/$@.log)" -ge 24 || { echo "fewer tests ran against a cluster than expected"; exit 1; }

test-short: ## quick loop: no race detector, long tests skipped
	$(GO) test -short ./...

build: ## static binaries in bin/
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/dingproxy ./cmd/dingproxy
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/fakedingtalk ./cmd/fakedingtalk

run: build ## run dingproxy on configs/dingproxy.yaml
	./bin/dingproxy -config configs/dingproxy.yaml

docker: ## the container image (multi-stage, static binary, distroless nonroot)
	docker build --build-arg VERSION=$(VERSION) -t dingproxy:$(VERSION) .

fake: build ## run the fake DingTalk on 127.0.0.1:9999
	./bin/fakedingtalk

check-config: build ## validate the example configuration
	./bin/dingproxy -check-config -config configs/dingproxy.yaml

examples: build ## the official Node and Go SDKs, then a robot alert burst with deferred sends, through dingproxy to the fake DingTalk (examples/; about 1.5 minutes; needs Node 20+ and npm)
	GO=$(GO) ./examples/run.sh

bench: ## benchmarks (10 runs each, into bench/new.txt; compare with benchstat), then the fixed-rate latency tool
	mkdir -p bench
	$(GO) test -run='^$$' -bench=. -benchmem -count=10 ./... | tee bench/new.txt
	$(GO) run ./cmd/loadtest

loadtest: ## the latency dingproxy adds at the load scenario's rates, open loop, loopback (about 25 s)
	$(GO) run ./cmd/loadtest

# Counts, not durations: with -fuzztime=10s a slow machine can cut a worker
# off mid-run and the fuzzer reports "context deadline exceeded".
FUZZ_N ?= 20000x
FUZZ_N_CONFIG ?= 2000x
fuzz: ## each fuzzer for FUZZ_N runs (FUZZ_N_CONFIG for the slower config loader); seed corpora in testdata/fuzz
	$(GO) test -run='^$$' -fuzz='^FuzzClassify$$' -fuzztime=$(FUZZ_N) ./internal/dingtalk
	$(GO) test -run='^$$' -fuzz='^FuzzHasIdempotencyKey$$' -fuzztime=$(FUZZ_N) ./internal/dingtalk
	$(GO) test -run='^$$' -fuzz='^FuzzLoad$$' -fuzztime=$(FUZZ_N_CONFIG) ./internal/config
	$(GO) test -run='^$$' -fuzz='^FuzzTokenCall$$' -fuzztime=$(FUZZ_N_CONFIG) ./internal/proxy
	$(GO) test -run='^$$' -fuzz='^FuzzDescribe$$' -fuzztime=$(FUZZ_N) ./internal/dingtalk
	$(GO) test -run='^$$' -fuzz='^FuzzRawRequest$$' -fuzztime=$(FUZZ_N) ./internal/app
	$(GO) test -run='^$$' -fuzz='^FuzzDeferredRawRequest$$' -fuzztime=$(FUZZ_N) ./internal/app

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

tidy: ## fail if go.mod/go.sum are not tidy (changes nothing)
	$(GO) mod tidy -diff

# staticcheck 2026.2.2 is module version v0.8.2.
STATICCHECK_VERSION ?= v0.8.2
staticcheck: ## staticcheck, pinned, installed into bin/tools from the module proxy
	GOBIN=$(CURDIR)/bin/tools GOFLAGS= $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	./bin/tools/staticcheck ./...

.PHONY: fuzz loadtest help demo demo-fleet resilience test test-fleet test-fleet-cluster soak test-short build docker run fake check-config examples bench lint tidy staticcheck

# The configuration key table and the metric table in docs/ are written
# from the code, the alert table and deploy/k8s/prometheusrule.yaml from the
# rule file deploy/prometheus/dingproxy-rules.yaml; make test fails when the
# committed ones differ.
docs: ## regenerate the generated tables in docs/ (configuration keys, metrics, alerts) and deploy/k8s/prometheusrule.yaml from the code and the rule file
	$(GO) run ./tools/docgen

.PHONY: docs

# promtool is pinned: the one of Debian's prometheus package of this version,
# which make promtool unpacks alone into bin/tools (apt-get download, then
# dpkg-deb: the package is not installed, so no Prometheus server is set up
# or started). make rules takes bin/tools/promtool when it is there, else the
# promtool on the PATH, and refuses any other version.
PROMTOOL_PACKAGE := prometheus=2.42.0+ds-5+deb12u1
PROMTOOL_VERSION := 2.42.0
PROMTOOL ?= $(or $(wildcard bin/tools/promtool),promtool)
PROMTOOL_IS_PINNED = $(PROMTOOL) --version 2>&1 | head -n 1 | grep -q '^promtool, version $(subst .,\.,$(PROMTOOL_VERSION))[+ ]'
rules: ## promtool check rules on deploy/prometheus/dingproxy-rules.yaml and on the PrometheusRule's groups, then the rules' unit tests (deploy/prometheus/tests); needs promtool 2.42.0 (make promtool)
	@command -v $(PROMTOOL) >/dev/null 2>&1 || { echo "rules: no promtool. Run make promtool: it unpacks promtool $(PROMTOOL_VERSION) from the Debian package $(PROMTOOL_PACKAGE) into bin/tools (apt-get download; nothing is installed or started)."; exit 1; }
	@$(PROMTOOL_IS_PINNED) || { echo "rules: $(PROMTOOL) is not promtool $(PROMTOOL_VERSION) but: $$($(PROMTOOL) --version 2>&1 | head -n 1). Run make promtool: it puts that version in bin/tools."; exit 1; }
	$(PROMTOOL) check rules deploy/prometheus/dingproxy-rules.yaml
	# The PrometheusRule's groups as a rule file: what follows spec:, one level out.
	tmp=$$(mktemp -d) && sed -e '1,/^spec:$$/d' -e 's/^  //' deploy/k8s/prometheusrule.yaml > $$tmp/prometheusrule-groups.yaml && \
	$(PROMTOOL) check rules $$tmp/prometheusrule-groups.yaml; rc=$$?; rm -rf $$tmp; exit $$rc
	$(PROMTOOL) test rules deploy/prometheus/tests/*.yaml

promtool: ## promtool 2.42.0 into bin/tools, unpacked from the pinned Debian package prometheus (nothing installed or started; needs apt's package lists)
	@if $(PROMTOOL_IS_PINNED); then echo "promtool: $(PROMTOOL) is promtool $(PROMTOOL_VERSION) already"; exit 0; fi; \
	mkdir -p bin/tools && tmp=$$(mktemp -d) && \
	if (cd $$tmp && apt-get download -q $(PROMTOOL_PACKAGE)) && \
		dpkg-deb --fsys-tarfile $$tmp/prometheus_*.deb > $$tmp/data.tar && \
		tar -xOf $$tmp/data.tar ./usr/bin/promtool > bin/tools/promtool.new; then rc=0; else rc=1; fi; \
	rm -rf $$tmp; \
	if [ $$rc != 0 ]; then rm -f bin/tools/promtool.new; echo "promtool: could not get $(PROMTOOL_PACKAGE) (apt-get update first?)"; exit 1; fi; \
	chmod 755 bin/tools/promtool.new && mv bin/tools/promtool.new bin/tools/promtool && bin/tools/promtool --version 2>&1 | head -n 1

.PHONY: rules promtool
