import { Template } from '@huggingface/jinja';
import { fail } from '../errors.js';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | string;
  content: string;
}

/** What a chat template may refer to besides the messages. */
export interface ChatTokens {
  readonly source: string;
  readonly chatTemplate: string | undefined;
  readonly bosId: number | undefined;
  readonly eosIds: readonly number[];
  readonly padId: number | undefined;
  idToToken(id: number): string | undefined;
}

/**
 * The model's chat template (tokenizer_config.json chat_template, or chat_template.jinja) rendered for these
 * messages, ending with the prompt for the assistant's turn, as transformers' apply_chat_template does. The text
 * carries its own special tokens (BOS included where the template writes it): encode it with specialTokens false.
 */
export function renderChat(tok: ChatTokens, messages: ChatMessage[], opts: { addGenerationPrompt?: boolean } = {}): string {
  if (!tok.chatTemplate)
    fail(
      `${tok.source}: the tokenizer has no chat_template (tokenizer_config.json or chat_template.jinja), so --chat cannot format a conversation`,
    );
  let template: Template;
  try {
    template = new Template(tok.chatTemplate!);
  } catch (e) {
    fail(`${tok.source}: chat_template does not parse (${(e as Error).message})`);
  }
  const text = (id: number | undefined): string => (id === undefined ? '' : (tok.idToToken(id) ?? ''));
  try {
    return template.render({
      messages,
      add_generation_prompt: opts.addGenerationPrompt ?? true,
      bos_token: text(tok.bosId),
      eos_token: text(tok.eosIds[0]),
      pad_token: text(tok.padId),
    });
  } catch (e) {
    return fail(`${tok.source}: chat_template failed to render (${(e as Error).message})`);
  }
}
