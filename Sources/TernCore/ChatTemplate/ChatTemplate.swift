// Entry point for chat templates: parse a checkpoint's Jinja template once, then render conversations into
// prompt text exactly as Hugging Face's apply_chat_template would.

import Foundation

public final class ChatTemplate: Sendable {
    private let nodes: [JinjaNode]
    private let now: @Sendable () -> Date

    /// Parses `source`; syntax errors throw a `ChatTemplateError` with line and column.
    /// `now` supplies the clock behind `strftime_now` (tests pin it).
    public init(source: String, now: @escaping @Sendable () -> Date = { Date() }) throws {
        var lexer = TemplateLexer(source: source)
        try lexer.tokenize()
        var parser = TemplateParser(lexer: lexer)
        nodes = try parser.parseTemplate()
        self.now = now
    }

    /// Renders a conversation. `extraContext` adds or overrides variables (e.g. `tools`, `date_string`).
    public func render(messages: [ChatMessage], addGenerationPrompt: Bool, bosToken: String, eosToken: String,
                       extraContext: [String: TemplateValue] = [:]) throws -> String {
        var context: [String: TemplateValue] = [
            "messages": .array(messages.map(\.templateValue)),
            "add_generation_prompt": .bool(addGenerationPrompt),
            "bos_token": .string(bosToken),
            "eos_token": .string(eosToken),
        ]
        for (k, v) in extraContext { context[k] = v }
        return try render(context: context)
    }

    /// Renders with an arbitrary set of top-level variables (for messages richer than role and content).
    public func render(context: [String: TemplateValue]) throws -> String {
        let globals = JinjaScope(parent: nil)
        TemplateGlobals.install(into: globals)
        for (k, v) in context { globals.vars[k] = JinjaValue(v) }
        let interpreter = JinjaInterpreter(now: now)
        defer { interpreter.releaseScopes() }
        return try interpreter.render(nodes, scope: JinjaScope(parent: globals))
    }
}
