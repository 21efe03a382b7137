// Command ferretdb runs FerretDB's embeddable server with the SQLite backend.
//
// Muisti builds FerretDB through its embeddable package rather than cmd/ferretdb: a
// cmd/ferretdb built from the module cache panics at start because the tagged module lacks
// the generated build/version/version.txt, and the embeddable package skips that check.
package main

import (
	"context"
	"flag"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listenAddr := flag.String("listen-addr", "127.0.0.1:27017", "TCP address to listen on")
	handler := flag.String("handler", "sqlite", "storage backend: sqlite or postgresql")
	sqliteURL := flag.String("sqlite-url", "file:data/", "SQLite directory URI, ending with a slash")
	postgresURL := flag.String("postgresql-url", "", "PostgreSQL URL for the postgresql handler")
	logLevel := flag.String("log-level", "warn", "debug, info, warn or error")
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		log.Fatalf("invalid -log-level: %s", err)
	}
	logger := slog.New(&lazyAttrs{handler: slog.NewTextHandler(os.Stderr,
		&slog.HandlerOptions{Level: level})})

	server, err := ferretdb.New(&ferretdb.Config{
		Listener:      ferretdb.ListenerConfig{TCP: *listenAddr},
		Logger:        logger,
		Handler:       *handler,
		SQLiteURL:     *sqliteURL,
		PostgreSQLURL: *postgresURL,
	})
	if err != nil {
		log.Fatal(err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	logger.Warn("FerretDB listening", "addr", *listenAddr, "handler", *handler)
	if err := server.Run(ctx); err != nil {
		log.Fatal(err)
	}
}

// lazyAttrs keeps the attributes a logger is given With until a record is actually written.
// FerretDB's SQL layer calls With(args...) around every statement and then logs at debug
// level; the text handler formats those arguments (whole documents) in With itself, whatever
// the level: 7.6% of the store's CPU while the platform ingested events.
type lazyAttrs struct {
	handler slog.Handler
	steps   []func(slog.Handler) slog.Handler // WithAttrs and WithGroup, in order
}

func (h *lazyAttrs) Enabled(ctx context.Context, level slog.Level) bool {
	return h.handler.Enabled(ctx, level)
}

func (h *lazyAttrs) Handle(ctx context.Context, record slog.Record) error {
	handler := h.handler
	for _, step := range h.steps {
		handler = step(handler)
	}
	return handler.Handle(ctx, record)
}

func (h *lazyAttrs) WithAttrs(attrs []slog.Attr) slog.Handler {
	return h.with(func(handler slog.Handler) slog.Handler { return handler.WithAttrs(attrs) })
}

func (h *lazyAttrs) WithGroup(name string) slog.Handler {
	return h.with(func(handler slog.Handler) slog.Handler { return handler.WithGroup(name) })
}

func (h *lazyAttrs) with(step func(slog.Handler) slog.Handler) slog.Handler {
	return &lazyAttrs{handler: h.handler, steps: append(slices.Clip(h.steps), step)}
}
