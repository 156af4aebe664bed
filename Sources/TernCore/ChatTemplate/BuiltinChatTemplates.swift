// Chat templates chosen by the operator instead of the checkpoint (`--chat-template FILE|NAME`, as vLLM and
// llama-server offer): checkpoints such as the Gemma 3 GGUF on PyPI carry none. A name picks one of the built-in
// templates below, written for Tern in the Jinja subset it renders; anything else is read as a Jinja file.
// The built-ins produce the same text as each family's published template for conversations of plain text
// messages (ChatTemplateTests compares them).

import Foundation

public enum BuiltinChatTemplates {
    /// ChatML (Qwen, SmolLM and many fine-tunes): every message in <|im_start|>role … <|im_end|>.
    static let chatml = """
        {%- for m in messages -%}\
        {{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}\
        {%- endfor -%}\
        {%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}
        """

    /// Gemma (2 and 3): no system role — a system message is put before the first user turn, separated by a blank
    /// line; the assistant's role is "model"; turns must alternate, starting with the user.
    static let gemma = """
        {{- bos_token -}}\
        {%- if messages and messages[0]['role'] == 'system' -%}\
        {%- set prefix = messages[0]['content'] + '\\n\\n' -%}{%- set turns = messages[1:] -%}\
        {%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}\
        {%- for m in turns -%}\
        {%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}\
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}\
        {%- endif -%}\
        {{- '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\\n' -}}\
        {{- prefix if loop.first else '' -}}{{- m['content'] | trim -}}{{- '<end_of_turn>\\n' -}}\
        {%- endfor -%}\
        {%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}
        """

    /// Llama 3 (and 3.1/3.2 without tools): header-delimited turns, BOS once at the start.
    static let llama3 = """
        {{- bos_token -}}\
        {%- for m in messages -%}\
        {{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + (m['content'] | trim) + '<|eot_id|>' -}}\
        {%- endfor -%}\
        {%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}
        """

    public static let names = ["chatml", "gemma", "llama3"]

    /// The source of the built-in template `name`, or nil.
    public static func source(named name: String) -> String? {
        switch name {
        case "chatml": return chatml
        case "gemma": return gemma
        case "llama3": return llama3
        default: return nil
        }
    }
}

public struct ChatTemplateOptionError: Error, CustomStringConvertible {
    public let description: String
}

extension ChatTemplate {
    /// The template a `--chat-template` value names: a built-in name, else a Jinja file's path. Errors name the
    /// value and what went wrong (no such file and no such built-in, unreadable, syntax error).
    public static func named(orFile spec: String) throws -> ChatTemplate {
        if let source = BuiltinChatTemplates.source(named: spec) {
            return try ChatTemplate(source: source)
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: spec, isDirectory: &isDirectory) else {
            throw ChatTemplateOptionError(description: "chat template '\(spec)': no such file, and not a built-in template (\(BuiltinChatTemplates.names.joined(separator: ", ")))")
        }
        guard !isDirectory.boolValue, let data = FileManager.default.contents(atPath: spec),
              let source = String(data: data, encoding: .utf8) else {
            throw ChatTemplateOptionError(description: "chat template '\(spec)': cannot read it as a UTF-8 text file")
        }
        do {
            return try ChatTemplate(source: source)
        } catch {
            throw ChatTemplateOptionError(description: "chat template '\(spec)': \(error)")
        }
    }
}
