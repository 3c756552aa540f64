package llorch_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"llorch.dev/llorch"
)

// modelFile: $LLORCH_MODEL, else SmolLM2-135M through the repository's scripts/fetch-model.
func modelFile() string {
	if p := os.Getenv("LLORCH_MODEL"); p != "" {
		return p
	}
	out, err := exec.Command("../../scripts/fetch-model", "smollm2-135m").Output()
	if err != nil {
		panic("set LLORCH_MODEL to a GGUF file: " + err.Error())
	}
	return strings.TrimSpace(string(out))
}

// Load a model, render a chat prompt with its template, and stream a greedy answer.
func Example() {
	ctx, err := llorch.NewContext(llorch.ContextOptions{}) // CPU, all cores
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ctx.Close()
	model, err := llorch.LoadModel(ctx, modelFile(), nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer model.Close()
	session, err := model.NewSession(llorch.SessionOptions{NCtx: 512})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer session.Close()

	prompt, err := model.ApplyChatTemplate([]llorch.Message{{Role: "user", Content: "What is the capital of France?"}}, true)
	if err != nil {
		fmt.Println(err)
		return
	}
	var answer strings.Builder
	stats, err := session.Generate(context.Background(), prompt, llorch.GenerateParams{MaxTokens: 16},
		func(text string, token int32) bool {
			answer.WriteString(text) // or print it as it comes
			return true
		})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("tokens generated:", stats.GeneratedTokens > 0)
	fmt.Println("mentions Paris:", strings.Contains(answer.String(), "Paris"))
	// Output:
	// tokens generated: true
	// mentions Paris: true
}
