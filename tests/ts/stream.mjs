// Streams one message through the official TypeScript SDK and prints the result as JSON:
// {"text": <concatenated text deltas>, "usage": <final message usage>, "model": <model>}.
// Usage: node stream.mjs <base-url>   (or set ANTHROPIC_BASE_URL)
import Anthropic from '@anthropic-ai/sdk';

const baseURL = process.argv[2] ?? process.env.ANTHROPIC_BASE_URL;
if (!baseURL) {
  console.error('usage: node stream.mjs <base-url> (or set ANTHROPIC_BASE_URL)');
  process.exit(2);
}

const client = new Anthropic({
  baseURL,
  apiKey: process.env.ANTHROPIC_API_KEY ?? 'sk-ant-test',
  maxRetries: 0,
});

const stream = client.messages.stream({
  model: process.env.ANTHROPIC_MODEL ?? 'claude-sonnet-4-6',
  max_tokens: 64,
  messages: [{ role: 'user', content: 'Hello' }],
});

let text = '';
stream.on('text', (delta) => {
  text += delta;
});
const message = await stream.finalMessage();
process.stdout.write(`${JSON.stringify({ text, usage: message.usage, model: message.model })}\n`);
