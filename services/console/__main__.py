from services.console.app import ConsoleSettings, serve

serve(ConsoleSettings())
