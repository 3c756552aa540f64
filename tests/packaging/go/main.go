// A Go program that requires llorch.dev/llorch as a dependency (scripts/test-packaging.sh
// builds it in a scratch module with a replace to a read-only copy of bindings/go).
// usage: app MODEL.gguf
package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"llorch.dev/llorch"
)

func main() {
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "app:", err)
		os.Exit(1)
	}
}

func run(path string) error {
	ctx, err := llorch.NewContext(llorch.ContextOptions{})
	if err != nil {
		return err
	}
	defer ctx.Close()
	model, err := llorch.LoadModel(ctx, path, nil)
	if err != nil {
		return err
	}
	defer model.Close()
	session, err := model.NewSession(llorch.SessionOptions{NCtx: 512})
	if err != nil {
		return err
	}
	defer session.Close()
	prompt, err := model.ApplyChatTemplate([]llorch.Message{{Role: "user", Content: "What is the capital of France?"}}, true)
	if err != nil {
		return err
	}
	pieces, result := session.GenerateChan(context.Background(), prompt, llorch.GenerateParams{MaxTokens: 16})
	var answer strings.Builder
	for p := range pieces {
		answer.WriteString(p.Text)
	}
	if err := <-result; err != nil {
		return err
	}
	fmt.Printf("llorch %s: %s\n", llorch.Version(), answer.String())
	if !strings.Contains(answer.String(), "Paris") {
		return fmt.Errorf("the answer does not name Paris")
	}
	return nil
}
