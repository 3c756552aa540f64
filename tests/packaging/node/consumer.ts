// A TypeScript program using the llorch package installed from its npm pack tarball
// (scripts/test-packaging.sh compiles it strictly with tsc, then runs it).
// usage: node consumer.js MODEL.gguf
import { Context, GenerateOptions, GenerateStats, LlorchError, Model, Status, StopReason, libraryPath, version } from 'llorch';

async function main(file: string): Promise<void> {
  const ctx = new Context({ device: 'cpu' });
  const model: Model = await Model.load(ctx, file, { onProgress: (f: number) => f >= 0 });
  const session = model.createSession({ nCtx: 512, seed: 1 });
  const prompt: string = model.applyChatTemplate([{ role: 'user', content: 'What is the capital of France?' }], true);
  const opts: GenerateOptions = { maxTokens: 16, repeatPenalty: 1, logitBias: {}, stop: [] };
  // @ts-expect-error: the types refuse a string where a number belongs
  const wrong: GenerateOptions = { maxTokens: 'sixteen' };
  void wrong;
  let answer = '';
  for await (const piece of session.stream(prompt, opts)) answer += piece.text;
  const stats: GenerateStats = await session.generate(' Thanks!', { maxTokens: 1, onToken: (_t: string, _id: number) => true });
  const stopped = [StopReason.EOS, StopReason.LIMIT].includes(stats.stopReason as 0 | 1);
  session.close();
  model.close();
  ctx.close();
  console.log(`llorch ${version()} from ${libraryPath}: ${answer}`);
  if (!answer.includes('Paris') || !stopped) throw new Error(`bad answer ${JSON.stringify(answer)} or stop ${stats.stopReason}`);
}

main(process.argv[2]).catch((e: unknown) => {
  const status = e instanceof LlorchError ? ` (status ${e.statusName}, ${e.status === Status.IO ? 'io' : 'other'})` : '';
  console.error(`consumer: ${e instanceof Error ? e.message : String(e)}${status}`);
  process.exit(1);
});
