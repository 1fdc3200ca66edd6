// Command dingproxy is a sidecar reverse proxy that makes any DingTalk client
// reliable: one shared access token, DingTalk-aware retries that never repeat
// a send, and more. See the README.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
	// quota.timezone is read with time.LoadLocation; the release image
	// (distroless/static) has no zoneinfo: the binary carries its own.
	_ "time/tzdata"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/dingproxy/dingproxy/internal/app"
	"github.com/dingproxy/dingproxy/internal/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit statuses.
const (
	exitOK        = 0
	exitFailure   = 1
	exitBadConfig = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dingproxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML configuration `file` (default: built-in defaults and DINGPROXY_* environment)")
	checkOnly := fs.Bool("check-config", false, "validate the configuration and exit: 0 if valid, 2 if not")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) { // -h asked for the usage: not an error
			return exitOK
		}
		return exitBadConfig
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "dingproxy: unexpected arguments: %q\n", fs.Args())
		return exitBadConfig
	}
	if *showVersion {
		fmt.Fprintf(stdout, "dingproxy %s\n", version)
		return exitOK
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "dingproxy: invalid configuration:\n%s\n", indent(err.Error()))
		return exitBadConfig
	}
	if *checkOnly {
		fmt.Fprintln(stdout, "configuration is valid")
		return exitOK
	}
	log, level, err := newLogger(cfg.Log, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "dingproxy: %v\n", err)
		return exitBadConfig
	}
	defer log.Sync()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serve(ctx, cfg, *configPath, log, level); err != nil {
		var ce *app.ConfigError
		if errors.As(err, &ce) {
			// A setting that cannot be used as it is (outbox.dir not
			// writable): as for an invalid configuration.
			log.Error("dingproxy cannot start: "+ce.Key+" cannot be used", zap.String("key", ce.Key), zap.Error(ce.Err))
			fmt.Fprintf(stderr, "dingproxy: %v\n", ce)
			return exitBadConfig
		}
		log.Error("dingproxy stopped", zap.Error(err))
		return exitFailure
	}
	return exitOK
}

func serve(ctx context.Context, cfg *config.Config, path string, log *zap.Logger, level zap.AtomicLevel) error {
	a, err := app.New(cfg, log, app.WithVersion(version), app.WithLevel(level))
	if err != nil {
		return err
	}
	defer a.Close()
	// Live reload: the file's directory is watched (a ConfigMap update is a
	// symlink swap there), and SIGHUP reloads on demand.
	if path != "" {
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		reload := func() { a.Reload(path) }
		done, err := config.Watch(wctx, path, 0, reload)
		if err != nil {
			log.Warn("configuration file not watched: reload with SIGHUP", zap.Error(err))
		} else {
			defer func() { cancel(); <-done }()
		}
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		go func() {
			for {
				select {
				case <-wctx.Done():
					return
				case <-hup:
					reload()
				}
			}
		}()
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	adminLn, err := net.Listen("tcp", cfg.AdminListen)
	if err != nil {
		ln.Close()
		return fmt.Errorf("admin listen: %w", err)
	}
	a.Start()
	errLog := zap.NewStdLog(log.Named("http"))
	srv := a.Server(errLog)
	admin := &http.Server{Handler: a.AdminHandler(), ErrorLog: errLog, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(a.Listener(ln)) }()
	go func() { errc <- admin.Serve(adminLn) }()
	a.SetReady(true)
	log.Info("dingproxy started", zap.String("version", version), zap.String("listen", ln.Addr().String()),
		zap.String("admin_listen", adminLn.Addr().String()), zap.Bool("injecting_tokens", a.Tokens() != nil),
		zap.String("fleet", fleetMode(cfg)), zap.Stringer("fleet_redis", cfg.Fleet.RedisURL))

	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	timeout := a.Config().ShutdownTimeout // as last reloaded
	log.Info("shutting down", zap.Duration("shutdown_timeout", timeout))
	a.SetReady(false)
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err = srv.Shutdown(sctx)
	admin.Close()
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if err != nil {
		log.Warn("in-flight requests cut at shutdown_timeout")
	}
	return nil
}

// newLogger builds the one logger, JSON or console, at a level a reload
// can change.
func newLogger(c config.Log, stderr io.Writer) (*zap.Logger, zap.AtomicLevel, error) {
	level, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, zap.AtomicLevel{}, fmt.Errorf("log.level: %w", err)
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if c.Format == "console" {
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	lvl := zap.NewAtomicLevelAt(level)
	core := zapcore.NewCore(enc, zapcore.AddSync(stderr), lvl)
	return zap.New(core), lvl, nil
}

func indent(s string) string {
	out := "  "
	for _, r := range s {
		out += string(r)
		if r == '\n' {
			out += "  "
		}
	}
	return out
}

// fleetMode names the fleet mode for the start line.
func fleetMode(cfg *config.Config) string {
	if cfg.Fleet.RedisURL == "" {
		return "alone"
	}
	return "shared"
}
